"""One picture of the label-efficiency runs' sample grids, each with its row's
name above it (README.md). Usage: montage.py OUT.png NAME=GRID.png ..."""
import sys

from PIL import Image, ImageDraw, ImageFont


def main():
    out, items = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
    grids = [(name, Image.open(path).convert("RGB")) for name, path in items]
    cols = 5
    rows = (len(grids) + cols - 1) // cols
    w = max(g.width for _, g in grids)
    h = max(g.height for _, g in grids)
    label, pad = 16, 6
    sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + label + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (name, g) in enumerate(grids):
        x = pad + (i % cols) * (w + pad)
        y = pad + (i // cols) * (h + label + pad)
        draw.text((x, y), name, fill="black", font=font)
        sheet.paste(g, (x, y + label))
    sheet.save(out, optimize=True)


if __name__ == "__main__":
    main()
