"""The ledger contract both programs share: tables, migrations, where the ledger lives, the queries,
the hashrate formula and the worker-name rule. `proxy` writes it, `scorer` reads it; this package
imports neither of them."""
