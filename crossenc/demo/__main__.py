import sys

from crossenc.demo.main import main

if __name__ == "__main__":
    sys.exit(main())
