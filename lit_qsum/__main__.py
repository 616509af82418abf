"""``python -m lit_qsum`` is the ``lit-qsum`` console script."""

from lit_qsum.cli import main

if __name__ == "__main__":
    main()
