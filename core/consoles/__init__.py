"""The console front door: the console proxy and the pages it serves."""
