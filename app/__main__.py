"""``python -m app``: the same as ``python app/app.py``."""

from app.app import main

if __name__ == "__main__":
    main()
