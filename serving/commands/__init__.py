"""The `serving` command line, one module per product: local.py (the development
server), pull.py (the puller and `verify`), store.py (labels, promote, rollback, gc),
client.py (classify, status, metadata). serving/cli.py assembles them."""
