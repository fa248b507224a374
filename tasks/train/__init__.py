"""The train stage: LoRA fine-tuning of the chat model on curated ChatML records.

`tasks.train.data` turns records into token ids with the loss on the answer
only; `tasks.train.sft.train_lora` runs the resumable training loop. Neither
is imported here, so importing the package stays cheap.
"""
