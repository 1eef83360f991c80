"""What Cleo remembers: the memory book, learning, the memory that takes part in a turn, recall and vectors."""
