// PartID canvas extension. Registered now so ComfyUI serves PartID's web folder; the legend,
// region toggles and identity previews arrive with the parsing and apply nodes.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "PartID.core",
});
