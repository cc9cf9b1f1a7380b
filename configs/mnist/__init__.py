"""MNIST: the CIFAR-10 recipes on 28x28 digits, one file per row; ``common`` holds the rows."""
