"""Campaigns: roll a bundle out across a selection of the fleet, and track each vehicle."""
