"""What the template imports from cmworker to load a user's app: the ``@function`` registry, schema
inference from type hints, the job context and result encoding. Nothing here touches the network."""
