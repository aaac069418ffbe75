"""``python -m app`` (from the repository root): serve the web app (see :mod:`app.app`)."""

from app.app import main

if __name__ == "__main__":
    main()
