# report stage rules (being wired)
