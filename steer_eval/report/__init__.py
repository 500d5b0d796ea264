"""Reading records into numbers, tables and plots; pure: no model is loaded here."""
