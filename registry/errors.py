"""Small domain errors of the registry layer."""


class RegistryError(RuntimeError):
    """Base class for registry failures callers may want to handle."""


class RegistryUnavailableError(RegistryError):
    """The MLflow tracking server cannot be reached."""


class AliasNotFoundError(RegistryError):
    """A registered model or prompt has no version under the requested alias."""
