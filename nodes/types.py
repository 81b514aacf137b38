"""PartID's custom edge types. Named so they cannot be wired into other packs' look-alike types."""
from comfy_api.latest import io

FaceParser = io.Custom("PARTID_FACE_PARSER")
BodyParser = io.Custom("PARTID_BODY_PARSER")
FaceAnalyzer = io.Custom("PARTID_FACE_ANALYZER")
ConsistentIDAdapter = io.Custom("PARTID_CONSISTENTID")
VisualPersonaAdapter = io.Custom("PARTID_VISUAL_PERSONA")
DINOv2 = io.Custom("PARTID_DINOV2")
LabelMap = io.Custom("PARTID_LABEL_MAP")      # models.parsing.LabelMap: int map + label names
Faces = io.Custom("PARTID_FACES")             # models.face_analysis.FaceAnalysisResult
FaceEmbeds = io.Custom("PARTID_FACE_EMBEDS")    # float32 [N, 512] L2-normed ArcFace; zero rows = no face
CIDRegions = io.Custom("PARTID_CID_REGIONS")    # models.consistentid.regions.RegionStates
CIDImageStates = io.Custom("PARTID_CID_IMAGE_STATES")  # models.consistentid.region_images.ImageStates
Identity = io.Custom("PARTID_IDENTITY")          # models.identity_tokens.IdentityTokens
