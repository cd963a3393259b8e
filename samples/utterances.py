"""Write ``servicemaker/speech/data/utterances.npz``: the short English utterances svc-deploy ships for the speech
networks' INT8 calibration and accuracy gate (synthesized with espeak-ng; run once, the file is committed).

    python -m servicemaker.samples.utterances
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from servicemaker.samples.espeak import synthesize

CALIBRATION = (
    "the weather will be sunny tomorrow", "please call my mother at seven", "turn left at the next corner",
    "how much does the ticket cost", "we met at the station in the morning", "play some quiet music",
    "the meeting starts at half past nine", "can you read the message again", "set a timer for ten minutes",
    "the train to london is late", "open the window in the kitchen", "my number is four two six eight",
)
SAMPLES = (
    "what time is it now", "the children are playing outside", "send the report before friday",
    "three hundred and twelve", "stop the music please", "is the shop open on sunday",
    "go up the stairs and turn right", "yes that is correct",
)
VOICES = (("en-us", 150, 50), ("en+m3", 170, 40), ("en-us+f2", 140, 60), ("en+m1", 185, 45))


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "servicemaker" / "speech" / "data" / "utterances.npz"
    arrays: dict[str, np.ndarray] = {}
    for name, texts in (("calibration", CALIBRATION), ("samples", SAMPLES)):
        for i, text in enumerate(texts):
            voice, speed, pitch = VOICES[i % len(VOICES)]
            audio = synthesize(text, voice=voice, speed=speed, pitch=pitch, sample_rate=16000)
            arrays[f"{name}/{i:02d}"] = np.round(audio * 32767).astype(np.int16)
            arrays[f"{name}/{i:02d}/text"] = np.array(text)
    np.savez_compressed(out, **arrays)
    print(out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
