"""``ticketctl protocol``: the whole Multi-Ticket Ensemble protocol in one command (plan, executors, report)."""
