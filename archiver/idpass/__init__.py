"""Everything that speaks to, or guesses about, GlobalData's ID Pass API."""
