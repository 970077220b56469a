# KubeDNA node image on Ubuntu 24.04, built from Canonical's image on a cloud builder and
# carrying the same layer as `kubedna-image build` (layer.tar from its output directory:
# agent, units, configuration, Kubernetes artifacts, /etc/kubedna/image.json).
#
#   kubedna-image build --base debian-12 --out /var/tmp/kubedna-image-out/x --outputs tar
#   packer init packer/
#   packer build -only 'qemu.*'   -var layer_tar=/var/tmp/kubedna-image-out/x/layer.tar packer/
#   packer build -only 'hcloud.*' -var layer_tar=... -var hcloud_token=$HCLOUD_TOKEN packer/
# See docs/image.md "Packer".

packer {
  required_plugins {
    hcloud = {
      source  = "github.com/hetznercloud/hcloud"
      version = ">= 1.4.0"
    }
    qemu = {
      source  = "github.com/hashicorp/qemu"
      version = ">= 1.1.0"
    }
  }
}

variable "layer_tar" {
  type        = string
  description = "layer.tar written by `kubedna-image build` (the files the image layers on the base)."
}

variable "hcloud_token" {
  type        = string
  default     = env("HCLOUD_TOKEN")
  sensitive   = true
  description = "Hetzner Cloud API token (hcloud builds only)."
}

variable "hcloud_location" {
  type    = string
  default = "fsn1"
}

variable "hcloud_server_type" {
  type    = string
  default = "cx22"
}

variable "ubuntu_cloud_image_url" {
  type        = string
  default     = "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img"
  description = "Official Ubuntu 24.04 cloud image (qemu builds)."
}

variable "ubuntu_cloud_image_checksum" {
  type        = string
  default     = "file:https://cloud-images.ubuntu.com/noble/current/SHA256SUMS"
  description = "Checksum of the cloud image; pin a sha256:... value for reproducible builds."
}

variable "image_name" {
  type    = string
  default = "kubedna-node-ubuntu-24.04"
}

source "hcloud" "ubuntu" {
  token         = var.hcloud_token
  image         = "ubuntu-24.04"
  location      = var.hcloud_location
  server_type   = var.hcloud_server_type
  ssh_username  = "root"
  snapshot_name = "${var.image_name}-{{timestamp}}"
  snapshot_labels = {
    "kubedna.io/image" = var.image_name
  }
}

source "qemu" "ubuntu" {
  iso_url          = var.ubuntu_cloud_image_url
  iso_checksum     = var.ubuntu_cloud_image_checksum
  disk_image       = true
  disk_size        = "8G"
  format           = "qcow2"
  accelerator      = "kvm"
  headless         = true
  memory           = 2048
  cpus             = 2
  efi_boot         = true
  efi_firmware_code = "/usr/share/OVMF/OVMF_CODE_4M.fd"
  efi_firmware_vars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
  # The build-time NoCloud seed only lets packer in over SSH; it is wiped before shutdown.
  cd_files         = ["${path.root}/http/user-data", "${path.root}/http/meta-data"]
  cd_label         = "cidata"
  ssh_username     = "packer"
  ssh_password     = "packer"
  ssh_timeout      = "20m"
  shutdown_command = "sudo shutdown -P now"
  output_directory = "output-${var.image_name}"
  vm_name          = "${var.image_name}.qcow2"
}

build {
  sources = ["source.hcloud.ubuntu", "source.qemu.ubuntu"]

  provisioner "file" {
    source      = var.layer_tar
    destination = "/tmp/kubedna-layer.tar"
  }

  provisioner "shell" {
    script          = "${path.root}/scripts/apply-layer.sh"
    execute_command = "sudo sh -c '{{ .Vars }} sh {{ .Path }}'"
    environment_vars = [
      "KUBEDNA_LAYER_TAR=/tmp/kubedna-layer.tar",
    ]
  }
}
