# ritc stage rules (being wired)
