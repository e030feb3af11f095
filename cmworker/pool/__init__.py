"""The engine, both sides of the pipe: the supervisor loop (parent), the template and its workers
(children), the messages between them, output capture and the OS mechanics of the limits. The child
side never imports the network stack."""
