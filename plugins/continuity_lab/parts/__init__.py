"""The parts the sandbox is built of: nodes, storage, the application, SSH, the services around them."""
