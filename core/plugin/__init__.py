"""The plugin system: markers, hook specs, the manager that loads plugins, the registry, the components' contracts,
the plugin scaffold and the host-sync audit. Every other room of the engine reaches plugins only through here."""
