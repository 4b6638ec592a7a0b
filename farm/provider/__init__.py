"""The provider: the Claude Messages API as the farm calls it (the official SDK), and the
classification of what can go wrong with a call."""
