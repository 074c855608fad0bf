"""Services: where the business decisions are made. No HTTP types here."""
