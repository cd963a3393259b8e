"""``python -m servicemaker.cli.build_main`` runs svc-build (for environments without the console script)."""

from servicemaker.cli.build import main

if __name__ == "__main__":
    main()
