"""Lost attempts' ledger rows now live in `synthgen.cost.ledger`; this name stays importable
for flows/run.py until it imports them from there."""

from synthgen.cost.ledger import lost_rows, record_lost_attempts

__all__ = ["lost_rows", "record_lost_attempts"]
