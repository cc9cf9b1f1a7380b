"""ml_collections configs of the experiments: ``get_config()`` is the default (small) size,
``get_config("full")`` the full size for accelerators (``--config=...py:full``)."""
