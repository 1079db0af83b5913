"""ticketctl: lottery-ticket subnetworks of pretrained language models, finetuned and ensembled."""

__version__ = "0.1.0"
