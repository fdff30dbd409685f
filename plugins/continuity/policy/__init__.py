"""Policy: the policy file's models, where a deployment's files are, names found by name, who may do what."""
