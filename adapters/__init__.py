"""Parameter-efficient adaptation of the shared encoder (LoRA via peft) and few-shot fitting."""
