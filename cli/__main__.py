"""``python -m actrec.cli`` (and ``torchrun ... -m actrec.cli``): the same command line as the ``actrec`` script."""

from actrec.cli import main

if __name__ == "__main__":
    main()
