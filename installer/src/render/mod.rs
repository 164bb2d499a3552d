//! Every service configuration file, rendered from the config with the embedded templates in assets/.
