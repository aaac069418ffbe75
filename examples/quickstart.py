import torch
from peft import PeftModel, get_peft_model
from transformers import RobertaConfig, RobertaForSequenceClassification

from loca_diffusion import LoCAConfig, LoCASchedule  # importing registers LoCA with peft

# Any PyTorch model works; real users load e.g. RobertaForSequenceClassification.from_pretrained("roberta-base").
torch.manual_seed(0)
tiny = RobertaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
model = get_peft_model(
    RobertaForSequenceClassification(tiny),
    LoCAConfig(target_modules=["query", "value"], n_frequency=200, modules_to_save=["classifier"]),
)
model.print_trainable_parameters()

# Alternate coefficient steps (B_a) and location steps (B_l) until T_s, then coefficients only.
schedule = LoCASchedule(model, coefficient_steps=10, location_steps=20, location_training_steps=60)
optimizer = torch.optim.AdamW(
    schedule.parameter_groups(lr=5e-3, weight_decay=1e-2, location_lr=1e-3,
                              other_parameters=model.parameters())
)
input_ids, labels = torch.randint(0, 100, (16, 12)), torch.randint(0, 2, (16,))
for step in range(100):
    loss = model(input_ids=input_ids, labels=labels).loss
    loss.backward()
    schedule.mask_gradients()  # the group outside its phase is left untouched
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    schedule.step()
print(f"loss after 100 steps: {loss.item():.4f}; phase now: {schedule.phase()}")

layer = model.base_model.model.roberta.encoder.layer[0].attention.self.query
print("learned locations (row, col) of layer 0 query:", layer.get_locations("default")[:, :5].tolist())

model.save_pretrained("loca-quickstart")  # adapter_config.json + adapter_model.safetensors
torch.manual_seed(0)
reloaded = PeftModel.from_pretrained(RobertaForSequenceClassification(tiny), "loca-quickstart")
model.eval()
with torch.no_grad():
    same = torch.allclose(model(input_ids=input_ids).logits, reloaded(input_ids=input_ids).logits, atol=1e-5)
    merged = reloaded.merge_and_unload()  # plain RoBERTa again, no inference overhead
    same_merged = torch.allclose(model(input_ids=input_ids).logits, merged(input_ids=input_ids).logits, atol=1e-5)
print(f"reloaded adapter reproduces the outputs: {same}; merged model too: {same_merged}")
