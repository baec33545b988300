"""Published PyTorch affect models (EmoNet, HSEmotion) converted into Keras."""
