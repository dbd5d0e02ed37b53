// Placeholder so that an area library with no sources yet still builds.
