"""Fine-tune a frozen VGG16 and publish it as a versioned SavedModel (see README.md)."""
