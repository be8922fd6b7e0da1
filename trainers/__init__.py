"""LoRA fine-tuning for Clara, independent of the web API, the task queue and the database.

Modules:
    config      LoraHyperparameters, their bounds, and TrainingConfigError.
    data        JSONL record validation and encoding with loss masks.
    devices     GPU pinning for worker processes and device selection.
    progress    TrainingProgress, the ProgressReporter protocol and the Trainer callback.
    lora        check_request and train, which publish an adapter directory.
    model_loading  The attention implementations Clara selects, and the revision a model was loaded from.
    tiny_model  A tiny local model for tests and demos.

This file imports nothing so that trainers.devices.pin_gpu can run before torch is imported.
"""
