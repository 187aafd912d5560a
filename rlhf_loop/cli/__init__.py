"""The ``rlhf-loop`` command line: the entry points, and with ``rlhf_loop.demo`` the only kernel code
that imports ``services`` and ``workers`` (inside each command's body, so ``--help`` stays light).

- ``main``: the root command, every group registered, ``main(argv) -> int``
- ``options``: the settings loader and the options several commands share
- ``demo``, ``training``, ``serving``, ``model``, ``adapters``, ``admin``, ``maintenance``: one module per
  command group
- ``api_client``: the small HTTP client the approver commands use
"""
