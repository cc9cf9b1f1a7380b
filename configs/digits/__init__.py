"""scikit-learn's 8x8 digits, one file per paper row; ``common`` holds the rows."""
