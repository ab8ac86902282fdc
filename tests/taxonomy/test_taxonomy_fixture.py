"""A small backbone in the packaged CSV format, written to a temporary directory by tests."""

from pathlib import Path

BACKBONE = """name,rank,parent,aphia_id,status,accepted,plankton
Animalia,kingdom,,2,accepted,,
Chromista,kingdom,,7,accepted,,
Bacteria,kingdom,,6,accepted,,
Plantae,kingdom,,3,accepted,,0
Arthropoda,phylum,Animalia,1065,accepted,,
Crustacea,subphylum,Arthropoda,1066,accepted,,
Copepoda,class,Crustacea,1080,accepted,,1
Calanoida,order,Copepoda,1100,accepted,,
Calanidae,family,Calanoida,104152,accepted,,
Calanus,genus,Calanidae,104464,accepted,,
Calanus finmarchicus,species,Calanus,104464001,accepted,,
Eucalanidae,family,Calanoida,104159,accepted,,
Eucalanus,genus,Eucalanidae,104477,accepted,,
Cyclopoida,order,Copepoda,1101,accepted,,
Oithonidae,family,Cyclopoida,106485,accepted,,
Oithona,genus,Oithonidae,106485001,accepted,,
Malacostraca,class,Crustacea,1071,accepted,,
Decapoda,order,Malacostraca,1130,accepted,,
Euphausiacea,order,Malacostraca,1128,accepted,,1
Amphipoda,order,Malacostraca,1135,accepted,,
Branchiopoda,class,Crustacea,1072,accepted,,
Cladocera,order,Branchiopoda,1078,accepted,,
Insecta,class,Arthropoda,1150,accepted,,0
Diplopoda,class,Arthropoda,1151,accepted,,0
Chaetognatha,phylum,Animalia,2081,accepted,,1
Sagittoidea,class,Chaetognatha,2082,accepted,,
Aphragmophora,order,Sagittoidea,2083,accepted,,
Sagittidae,family,Aphragmophora,2084,accepted,,
Sagitta,genus,Sagittidae,2085,accepted,,
Cnidaria,phylum,Animalia,1267,accepted,,
Hydrozoa,class,Cnidaria,1337,accepted,,1
Siphonophorae,order,Hydrozoa,1371,accepted,,
Calycophorae,suborder,Siphonophorae,1372,accepted,,
Abylidae,family,Calycophorae,1373,accepted,,
Diphyidae,family,Calycophorae,1374,accepted,,
Narcomedusae,order,Hydrozoa,1375,accepted,,
Scyphozoa,class,Cnidaria,135220,accepted,,1
Chordata,phylum,Animalia,1821,accepted,,
Tunicata,subphylum,Chordata,146420,accepted,,
Appendicularia,class,Tunicata,146421,accepted,,1
Larvacea,class,,146421,synonym,Appendicularia,
Thaliacea,class,Tunicata,1839,accepted,,1
Doliolida,order,Thaliacea,1840,accepted,,
Salpida,order,Thaliacea,1841,accepted,,
Echinodermata,phylum,Animalia,1806,accepted,,
Asteroidea,class,Echinodermata,123080,accepted,,
Echinoidea,class,Echinodermata,123082,accepted,,
Mollusca,phylum,Animalia,51,accepted,,
Annelida,phylum,Animalia,882,accepted,,
Myzozoa,phylum,Chromista,368898,accepted,,
Dinophyceae,class,Myzozoa,19542,accepted,,1
Gonyaulacales,order,Dinophyceae,109391,accepted,,
Ceratiaceae,family,Gonyaulacales,109392,accepted,,
Tripos,genus,Ceratiaceae,840626,accepted,,
Tripos furca,species,Tripos,840627,accepted,,
Neoceratium,genus,,494048,synonym,Tripos,
Neoceratium furca,species,,494049,synonym,Tripos furca,
Ceratium,genus,Ceratiaceae,109475,accepted,,
Cladopyxis,genus,Gonyaulacales,109480,accepted,,
Ochrophyta,phylum,Chromista,345465,accepted,,
Bacillariophyceae,class,Ochrophyta,148899,accepted,,1
Chaetocerotales,order,Bacillariophyceae,148900,accepted,,
Chaetocerotaceae,family,Chaetocerotales,148901,accepted,,
Chaetoceros,genus,Chaetocerotaceae,148985,accepted,,
Chaetoceros curvisetus,species,Chaetoceros,148986,accepted,,
Chaetoceros pseudocurvisetus,species,Chaetoceros,148987,accepted,,
Chaetoceros didymus,species,Chaetoceros,148988,accepted,,
Rhizosoleniales,order,Bacillariophyceae,148902,accepted,,
Rhizosoleniaceae,family,Rhizosoleniales,148903,accepted,,
Guinardia,genus,Rhizosoleniaceae,149040,accepted,,
Guinardia delicatula,species,Guinardia,149041,accepted,,
Dactyliosolen,genus,Rhizosoleniaceae,149042,accepted,,
Ciliophora,phylum,Chromista,11,accepted,,1
Cyanobacteria,phylum,Bacteria,146537,accepted,,
Cyanophyceae,class,Cyanobacteria,146542,accepted,,
Oscillatoriales,order,Cyanophyceae,146544,accepted,,
Microcoleaceae,family,Oscillatoriales,146545,accepted,,
Trichodesmium,genus,Microcoleaceae,146546,accepted,,1
Aphanizomenon,genus,Oscillatoriales,146547,accepted,,
"""

VERNACULAR = """term,name
copepod,Copepoda
chaetognath,Chaetognatha
siphonophore,Siphonophorae
diatom,Bacillariophyceae
hydromedusa,Hydrozoa
ciliate,Ciliophora
dinoflagellate,Dinophyceae
krill,Euphausiacea
protist,
"""

OVERRIDES = """source,raw_label,name,qualifier,root_class,plankton,note
zoolake,ceratium,Ceratium,,,,freshwater Ceratium stays Ceratium
planktonset1.0,chordate_type1,,,,,unresolved: morphotype of an unknown chordate
jedioceans,LClass_shell,,part,living,,shell of an undetermined organism
"""


def write_fixture(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "backbone.csv").write_text(BACKBONE)
    (folder / "vernacular.csv").write_text(VERNACULAR)
    (folder / "overrides.csv").write_text(OVERRIDES)
    return folder
