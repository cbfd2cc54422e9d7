"""Asterisk adapter: AMI and ARI event streams and MixMonitor/ARI recordings to conversation events."""
