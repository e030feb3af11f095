"""Pipeline mode, supervised: the app's ``@cmworker.pipeline`` loop in a process of its own (``runner``)
under a parent that relays its logs, restarts it when it crashes and stops it on SIGTERM (``supervisor``)."""
