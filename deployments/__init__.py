"""Operating xco2: Prefect deployments (prefect.yaml), the local stack (stack.py), docker compose."""
