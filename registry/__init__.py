"""MLflow tracking, registration, aliases, promotion and loading the champion."""
