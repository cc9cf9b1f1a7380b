"""CIFAR-10 recipes (one file per published anchor); ``common`` builds image configs."""
