"""The `clara` command line: talks to the Clara API over HTTP only."""
