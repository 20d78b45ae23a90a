# debian-13: boot the patched base disk (made by the pipeline from an mmdebstrap rootfs) under QEMU,
# run the provisioners over SSH as a throwaway build user, record the installed packages, seal.
# Written for Debian's packer 1.6.6: HCL2 without `packer init` or required_plugins.
# Every variable without a default is passed by the pipeline (pipeline/builder/packer.py).

variable "base_image" {
  type        = string
  description = "bootable base disk (qcow2) the build starts from"
}

variable "output_directory" {
  type        = string
  description = "where Packer writes the disk; must not exist yet"
}

variable "vm_name" {
  type        = string
  description = "file name of the output disk"
}

variable "accelerator" {
  type    = string
  default = "tcg"
}

variable "machine_type" {
  type        = string
  default     = "pc"
  description = "QEMU machine type; the pipeline's accelerator probe boots the same machine"
}

variable "cpu_model" {
  type        = string
  default     = "max"
  description = "QEMU -cpu model (host under KVM, max under TCG), the one the probe proved"
}

variable "ssh_timeout" {
  type        = string
  default     = "30m"
  description = "how long to wait for the guest's SSH (short under KVM: the build then retries under TCG)"
}

variable "firmware_qemuargs" {
  type        = list(list(string))
  default     = []
  description = "UEFI: OVMF's pflash block devices (QemuMachine.firmware_args); empty under SeaBIOS"
}

variable "cpus" {
  type    = number
  default = 2
}

variable "memory" {
  type    = number
  default = 1024
}

variable "seed_dir" {
  type        = string
  description = "NoCloud seed folder holding meta-data and user-data (served as the cidata CD)"
}

variable "ssh_username" {
  type    = string
  default = "vmi-build"
}

variable "ssh_private_key_file" {
  type        = string
  description = "the per-build ed25519 key the seed authorises for ssh_username"
}

variable "scripts" {
  type        = list(string)
  description = "the appliance's provisioners, in order (the last one seals the image)"
}

variable "package_list" {
  type        = string
  description = "host path that receives the installed package list"
}

variable "serial_log" {
  type        = string
  description = "host file that receives the guest's serial console"
}

source "qemu" "appliance" {
  iso_url          = var.base_image
  iso_checksum     = "none" # the pipeline verifies and content-addresses the base itself
  disk_image       = true
  skip_resize_disk = true
  format           = "qcow2"
  disk_interface   = "virtio"
  disk_discard     = "unmap"
  disk_detect_zeroes = "unmap"
  accelerator      = var.accelerator
  machine_type     = var.machine_type
  cpus             = var.cpus
  memory           = var.memory
  headless         = true
  vnc_bind_address = "127.0.0.1"
  output_directory = var.output_directory
  vm_name          = var.vm_name
  cd_files         = ["${var.seed_dir}/meta-data", "${var.seed_dir}/user-data"]
  cd_label         = "cidata"
  qemuargs = concat([
    ["-cpu", var.cpu_model],
    # no option ROM on the NIC: OVMF would try a network boot before the disk
    ["-device", "virtio-net,netdev=user.0,romfile="],
    # Packer's own port forward listens on every interface: keep the build's SSH on loopback
    ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
    ["-serial", "file:${var.serial_log}"],
  ], var.firmware_qemuargs)
  communicator           = "ssh"
  ssh_username           = var.ssh_username
  ssh_private_key_file   = var.ssh_private_key_file
  ssh_timeout            = var.ssh_timeout
  ssh_handshake_attempts = 400
  shutdown_command       = "sudo -n /bin/sh /run/vmi-finish.sh"
  shutdown_timeout       = "10m"
  boot_wait              = "1s"
}

build {
  sources = ["source.qemu.appliance"]

  provisioner "shell" {
    # cloud-init must be done before anything else touches the system
    inline = ["cloud-init status --wait >/dev/null || cloud-init status --long"]
  }

  provisioner "shell" {
    scripts          = var.scripts
    execute_command  = "chmod +x {{ .Path }}; sudo -n env {{ .Vars }} {{ .Path }}"
    environment_vars = ["BUILD_USER=${var.ssh_username}", "DEBIAN_FRONTEND=noninteractive"]
  }

  provisioner "shell" {
    # the SBOM: every installed package, captured on tmpfs so nothing of it stays in the image
    inline = ["dpkg-query -W -f '$${db:Status-Abbrev}\\t$${Package}\\t$${Version}\\t$${Architecture}\\t$${source:Package}\\n' > /dev/shm/vmi-packages.tsv"]
  }

  provisioner "file" {
    direction   = "download"
    source      = "/dev/shm/vmi-packages.tsv"
    destination = var.package_list
  }
}
