"""From images to ecology: sampled volume per sample (`volumes`), counts and concentrations per
sample x taxon with classifier-error corrections (`abundance`), plots (`plots`) and the Darwin
Core Archive for OBIS / GBIF (`dwca`)."""
