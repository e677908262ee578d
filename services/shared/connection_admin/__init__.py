"""Administering connections, the one way the CLI, the dev stack and the app's API do it:
creating them, their credentials and webhook endpoints, enabling live, listing them."""
