"""Process configuration: settings from the environment, the production guard, the key ring they name."""
