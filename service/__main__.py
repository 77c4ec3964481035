"""`python -m service`: serve the bundle over HTTP (see service.main)."""

from service.main import main

main()
