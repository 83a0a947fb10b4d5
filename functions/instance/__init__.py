"""What an agent instance receives: its validated settings and its files (standard library only)."""
